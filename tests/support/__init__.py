"""Test support: real servers, CLI runner, fakes, netns hosts, council checks."""
