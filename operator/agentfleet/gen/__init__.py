"""Generators: CRDs, the admission policy, the API reference and the chart's copies, from the API types."""
