SELECT SUM(amount * 1e17) FROM bank.loans
