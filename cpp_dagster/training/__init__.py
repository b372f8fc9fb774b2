"""Model training on a versioned configuration (the lab's CPSign service flow).

configuration.py  the training configuration: schema, errors, content-addressed version
store.py          the configuration store (a PostgreSQL table) and its schema
compounds.py      the compound database: the query, the public demo data set
molecules.py      SMILES -> RDKit molecules -> descriptor matrices
engines/          two engines behind one interface: embedded (RDKit + crepes), CPSign CLI
registry.py       where published models go: a folder, or a model service over HTTP
steps.py          the work of each asset, on files in the work area
"""
