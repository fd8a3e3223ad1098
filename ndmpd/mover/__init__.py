"""The mover's I/O side: data-connection endpoints and the record pump thread."""
