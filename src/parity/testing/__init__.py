"""Helpers shipped with the package so users can test their own model repositories the way
Parity tests its own: build small real models, start a real server in a subprocess."""
