"""Search space: architectures as plain values, the spaces they come from, and sampling."""
