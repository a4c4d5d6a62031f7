"""A user's own model code, as it leaves a notebook: see 'Your own model' in the README."""
