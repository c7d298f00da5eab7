SELECT SUM(amount) / COUNT(*) FROM bank.loans
