"""The small runtime every marketbus service uses: settings, broker, health, metrics, backoff."""
