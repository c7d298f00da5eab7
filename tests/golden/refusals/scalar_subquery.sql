SELECT COUNT(*) / (SELECT COUNT(*) FROM bank.loans) FROM bank.customers
