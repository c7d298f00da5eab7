SELECT SUM(amout) FROM bank.loans
