"""Models: analytic cost, operators, the weight-sharing supernet and standalone subnets."""
