"""The pure core: policy, snapshot, planning, census and result. Values and decisions, no I/O."""
