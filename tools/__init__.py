"""Project tooling that is not part of the marketbus package (installers, validators)."""
