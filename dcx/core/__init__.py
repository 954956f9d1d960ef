"""The engine and everything a plugin may rely on. Imports no concrete plugin."""
