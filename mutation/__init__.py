"""Mutation testing: do the tests notice a wrong answer where nothing else would? (`make mutation`)."""
