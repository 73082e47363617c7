"""The use cases behind the routes: submit, read, cancel, wait, stream, health."""
