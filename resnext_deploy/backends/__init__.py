"""Backends behind one runner interface, and the registry that ``verify``, ``bench`` and ``serve`` loop over."""
