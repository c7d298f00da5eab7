SELECT SUM(amount / 12) FROM bank.loans
