"""Development and test tools that do not ship with the server: a local Cassandra node, jetchat
itself as a child process, and bulk sign-ups for tests and benchmarks."""
