SELECT SUM(3) FROM bank.loans
