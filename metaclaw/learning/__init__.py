"""Measuring whether the loop makes an agent better: taught preferences and their rules.

`preferences.py` holds what a scripted user wants and the rule that decides compliance (pure);
`bench/learning.py` teaches them through the proxy and measures before → after against a
control with learning switched off (docs/learning.md).
"""
