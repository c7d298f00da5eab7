SELECT COUNT(*) FROM read_csv('loans.csv')
