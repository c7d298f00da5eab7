SELECT amount + 1, COUNT(*) FROM bank.loans
