"""The console: pages in the browser for finance, read only through the services' HTTP APIs."""
