"""Operators of a block, one module per family; `registry` maps the names architectures use to them."""
