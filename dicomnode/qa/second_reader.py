def compare_readers(): pass
