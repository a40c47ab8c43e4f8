"""The lazy FUSE filesystem: paths map to tasks; reads turn into piece fetches."""
