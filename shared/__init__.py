"""The toolkit every service uses: envelope, subjects, store, inbox, outbox, consumer, API helpers."""
