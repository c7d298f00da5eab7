SELECT 1, COUNT(*) FROM bank.loans
