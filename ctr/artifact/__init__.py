"""The exported model artifact: writing, hashing, loading strictly."""
