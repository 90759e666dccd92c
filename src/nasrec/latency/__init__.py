"""Serving latency predicted from a latency table of the serving machine (`nasrec latency profile`).

- `model`: the table's format, reading and checks, and `LatencyModel` (an architecture's predicted
  latency: the table's components added up, plus a fitted overhead);
- `budget`: the latency model a configuration names, and the least latency a space can reach.

Measuring (exporting and timing models, profiling a table) is `nasrec.export`'s: this package only
computes, so that training and search can use it below the export layer.
"""
