"""Local stand-ins for the project's upstreams (plain HTTP, the Hugging Face Hub) and small real test data."""
