"""What happens once the object is complete: the metadata document (and, later, events and
the local-file action). Pure builders here; the step that runs them is stream.finalize."""
