"""moshi-mac test suite."""
