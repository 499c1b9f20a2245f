"""HTTP: intake API, health, metrics and OpenAPI (admin comes later)."""
