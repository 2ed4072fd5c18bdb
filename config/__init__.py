"""Typed, frozen run and data configs and their strict loader, shared by features/, ctr/ and search/."""
