"""The operator's programs: demo, audit, dlq, chaos, bench, floor, store_bench, and what they share.

They import the runtime toolkit (``shared``) and the services' public interfaces; nothing in
the toolkit or in a service imports them (tests/test_layout.py holds that line).
"""
