def output_checks(): pass
