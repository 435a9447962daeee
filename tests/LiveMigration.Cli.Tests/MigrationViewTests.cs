using System.Text.Json;
using LiveMigration.Cli.Commands;

namespace LiveMigration.Cli.Tests;

/// <summary>How lsm shows a migration's progress and steps: never backwards, each step once, no stale error once completed.</summary>
public sealed class MigrationViewTests
{
    private static JsonElement Json(string text) => JsonDocument.Parse(text).RootElement.Clone();

    [Fact]
    public void Progress_is_bytes_copied_and_left_with_the_time_left_and_a_growing_total_does_not_move_copied_back()
    {
        var early = MigrationView.Progress(Json("""{"done": 52428800, "total": 104857600, "remainingSeconds": 4.2}"""), completed: false);
        // the guest wrote on: the mirror's total grew, the share copied shrank, but what was copied did not
        var later = MigrationView.Progress(Json("""{"done": 62914560, "total": 209715200, "remainingSeconds": 9.5}"""), completed: false);

        Assert.Equal("4.2 s", early.Eta);
        Assert.DoesNotContain("%", early.Copied + early.Left + later.Copied + later.Left);
        Assert.NotEqual(early.Copied, later.Copied);
        Assert.Equal(("", "", ""), MigrationView.Progress(Json("""{"done": 0, "total": 0}"""), completed: false));
        // completed: nothing left, whatever the last progress event said
        var done = MigrationView.Progress(Json("""{"done": 10, "total": 20, "remainingSeconds": 1}"""), completed: true);
        Assert.Equal("", done.Eta);
        Assert.StartsWith("0", done.Left);
        // the last step (the source's deletion) copied nothing: a completed disk shows what all its steps copied
        var whole = MigrationView.Progress(Json("""{"done": 0, "total": 0, "copied": 1073741824}"""), completed: true);
        Assert.Equal("1.0 GiB", whole.Copied);
    }

    [Fact]
    public void A_domain_is_named_where_its_name_is_known_else_by_the_start_of_its_id()
    {
        var names = new DomainNames(new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase) { ["0f6579a4-3f50-42e6-a80e-23c4755a65a6"] = "domain-a" });
        Assert.Equal("domain-a", names.ShortOf("0f6579a4-3f50-42e6-a80e-23c4755a65a6"));
        Assert.Equal("domain-a", names.ShortOf("0F6579A4-3F50-42E6-A80E-23C4755A65A6"));
        Assert.Equal("556e3357", names.ShortOf("556e3357-a6e5-421b-b82f-57102e88fc5a"));
        Assert.Equal("", names.ShortOf(""));
    }

    [Fact]
    public void A_step_sent_again_after_a_restart_shows_once_with_the_entry_that_ended()
    {
        var timings = Json("""
            [
              {"step": "CloneImageStructure", "attempt": 1, "startedAt": "2026-12-02T05:00:00Z", "endedAt": "2026-12-02T05:00:01Z", "outcome": "succeeded"},
              {"step": "StartReplication", "attempt": 1, "startedAt": "2026-12-02T05:00:01Z", "endedAt": "", "outcome": ""},
              {"step": "StartReplication", "attempt": 1, "startedAt": "2026-12-02T05:00:09Z", "endedAt": "2026-12-02T05:00:10Z", "outcome": "succeeded"},
              {"step": "StartReplication", "attempt": 2, "startedAt": "2026-12-02T05:00:11Z", "endedAt": "2026-12-02T05:00:12Z", "outcome": "succeeded"}
            ]
            """).EnumerateArray();

        var shown = MigrationView.DistinctSteps(timings).Select(t => (t.Str("step"), t.Long("attempt"), t.Str("outcome"))).ToList();

        Assert.Equal([("CloneImageStructure", 1L, "succeeded"), ("StartReplication", 1L, "succeeded"), ("StartReplication", 2L, "succeeded")], shown);
    }
}
