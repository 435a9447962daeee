using LiveMigration.Coordinator.Audit;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Tests.Audit;

/// <summary>The audit trail's pure rules: what is journaled, how events fold in, and how pages are cut.</summary>
public sealed class AuditStateTests
{
    private static readonly DateTimeOffset T0 = new(2026, 12, 2, 15, 0, 0, TimeSpan.Zero);

    private static RecordAuditRequest Request(int i) =>
        new($"request-{i}", T0.AddMinutes(i), "operator", "127.0.0.1", "POST", $"/api/vms/vm-{i}/stop", "{}", false);

    private static AuditState Recorded(int count, int keep = 100)
    {
        var state = AuditState.Empty(keep);
        for (var i = 1; i <= count; i++) state = state.Apply(state.Decide(Request(i))!);
        return state;
    }

    [Fact]
    public void A_request_is_recorded_once_and_numbered_in_order_and_its_outcome_once()
    {
        var state = Recorded(2);

        Assert.Null(state.Decide(Request(2)));
        var outcome = state.Decide(new RecordAuditOutcome("request-2", T0.AddHours(1), 409, "VM_BUSY"));
        Assert.NotNull(outcome);
        state = state.Apply(outcome);
        Assert.Null(state.Decide(new RecordAuditOutcome("request-2", T0.AddHours(2), 200, null)));
        Assert.Null(state.Decide(new RecordAuditOutcome("request-never-made", T0, 200, null)));

        var entries = state.Page(new GetAuditEntries(null, null, 10)).Entries;
        Assert.Equal([2L, 1L], entries.Select(e => e.Number));
        Assert.Equal((409, "VM_BUSY", T0.AddHours(1)), (entries[0].Status!.Value, entries[0].ErrorCode!, entries[0].AnsweredAt!.Value));
        Assert.Null(entries[1].Status);
    }

    [Fact]
    public void Pages_go_newest_first_and_next_leads_to_the_older_page_until_the_oldest()
    {
        var state = Recorded(5);

        var first = state.Page(new GetAuditEntries(null, null, 2));
        var second = state.Page(new GetAuditEntries(null, first.Next, 2));
        var last = state.Page(new GetAuditEntries(null, second.Next, 2));

        Assert.Equal([5L, 4L], first.Entries.Select(e => e.Number));
        Assert.Equal([3L, 2L], second.Entries.Select(e => e.Number));
        Assert.Equal([1L], last.Entries.Select(e => e.Number));
        Assert.Null(last.Next);
    }

    [Fact]
    public void Since_keeps_the_requests_recorded_at_or_after_it()
    {
        var page = Recorded(5).Page(new GetAuditEntries(T0.AddMinutes(3), null, 10));

        Assert.Equal([5L, 4L, 3L], page.Entries.Select(e => e.Number));
        Assert.Null(page.Next);
    }

    [Fact]
    public void Beyond_the_kept_entries_the_oldest_leave_memory_while_numbers_go_on()
    {
        var state = Recorded(5, keep: 3);

        Assert.Equal([5L, 4L, 3L], state.Page(new GetAuditEntries(null, null, 10)).Entries.Select(e => e.Number));
        // the outcome of a request no longer held is nothing to fold in
        Assert.Same(state, state.Apply(new AuditOutcomeRecorded("request-1", T0, 200, null)));
        Assert.Equal(5, state.LastNumber);
    }
}
