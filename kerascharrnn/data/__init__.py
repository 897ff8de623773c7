"""Text into ids: reading text files, torch-rnn's preprocessing into HDF5, the built-in corpora, and the
minibatch layout over the splits."""
