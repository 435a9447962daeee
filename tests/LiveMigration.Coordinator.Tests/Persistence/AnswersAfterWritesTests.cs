using LiveMigration.Coordinator.Persistence;

namespace LiveMigration.Coordinator.Tests.Persistence;

public sealed class AnswersAfterWritesTests
{
    [Fact]
    public void An_answer_goes_out_at_once_when_no_write_is_pending()
    {
        var answers = new AnswersAfterWrites();
        var sent = new List<string>();
        answers.Answer(() => sent.Add("a"));
        Assert.Equal(["a"], sent);
    }

    [Fact]
    public void An_answer_waits_for_the_writes_issued_before_it_and_not_for_later_ones()
    {
        var answers = new AnswersAfterWrites();
        var sent = new List<string>();
        answers.Issued();                       // write 1
        answers.Answer(() => sent.Add("after 1"));
        answers.Issued();                       // write 2
        answers.Issued();                       // write 3
        answers.Answer(() => sent.Add("after 3"));
        answers.Issued();                       // write 4, issued after both answers

        Assert.Empty(sent);
        answers.Done();                         // write 1 journaled
        Assert.Equal(["after 1"], sent);
        answers.Done();                         // write 2
        Assert.Equal(["after 1"], sent);
        answers.Done();                         // write 3
        Assert.Equal(["after 1", "after 3"], sent);
        answers.Answer(() => sent.Add("after 4"));
        Assert.Equal(["after 1", "after 3"], sent);
        answers.Done();                         // write 4
        Assert.Equal(["after 1", "after 3", "after 4"], sent);
    }
}
