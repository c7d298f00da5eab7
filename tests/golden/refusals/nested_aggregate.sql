SELECT SUM(COUNT(*)) FROM bank.loans
