"""The runtime toolkit every service imports: envelope, subjects, store, inbox, outbox, consumer, API helpers.

The operator's programs live in ``shared.ops``; nothing here imports them, nor any service.
"""
