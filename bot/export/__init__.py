"""One module per artifact format; each writes one file set and says how it was made."""
