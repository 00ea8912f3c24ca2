"""What every stage and command shares: the params schema, paths, atomic files, errors and the runner."""
