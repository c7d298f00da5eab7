SELECT COUNT(*) FROM bank.mortgages
