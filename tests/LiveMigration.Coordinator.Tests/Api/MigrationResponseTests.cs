using LiveMigration.Coordinator.Api;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Tests.Api;

/// <summary>What lsm, the dashboard and the event streams are given for a migration: each step once, no stale error.</summary>
public sealed class MigrationResponseTests
{
    private static readonly DateTimeOffset T0 = new(2026, 12, 2, 5, 0, 0, TimeSpan.Zero);

    private static MigrationView View(string status, bool finished) => new(
        MigrationId.New(), VmId.New(), status, finished, MigrationStrategy.PreCopy,
        [
            new DiskView(ImageId.New(), DomainId.New(), DomainId.New(), "Done", null, 1, 100, 120, null,
                "MIRROR_FAILED: the first mirror broke off",
                [
                    new StepTimingView(MigrationStep.CloneImageStructure, 1, T0, T0.AddSeconds(1), "succeeded"),
                    // sent, then sent again by the recovered saga with the same operation id: one attempt, listed twice
                    new StepTimingView(MigrationStep.StartReplication, 1, T0.AddSeconds(1), null, null),
                    new StepTimingView(MigrationStep.StartReplication, 1, T0.AddSeconds(9), T0.AddSeconds(10), "failed: MIRROR_FAILED"),
                    new StepTimingView(MigrationStep.StartReplication, 2, T0.AddSeconds(11), T0.AddSeconds(12), "succeeded"),
                    new StepTimingView(MigrationStep.Pivot, 1, T0.AddSeconds(12), T0.AddSeconds(13), "succeeded", SwitchStallMs: 4.2),
                ], Copied: 4_096),
        ],
        new MigrationError("MIRROR_FAILED", "the first mirror broke off"), T0, T0.AddSeconds(20), finished ? T0.AddSeconds(20) : null);

    [Fact]
    public void A_step_attempt_shows_once_with_the_entry_that_ended()
    {
        var response = MigrationEndpoints.ResponseOf(View("completed", finished: true));

        Assert.Equal(
            [("CloneImageStructure", 1, "succeeded"), ("StartReplication", 1, "failed: MIRROR_FAILED"), ("StartReplication", 2, "succeeded"), ("Pivot", 1, "succeeded")],
            response.Disks[0].Timings.Select(t => (t.Step, t.Attempt, t.Outcome)));
        Assert.Equal(4_096, response.Disks[0].Copied); // all its steps together, beside the last step's 100 of 120
    }

    [Fact]
    public void A_switch_shows_its_hosts_stall_and_other_steps_have_none()
    {
        var response = MigrationEndpoints.ResponseOf(View("completed", finished: true));

        Assert.Equal([null, null, null, 4.2], response.Disks[0].Timings.Select(t => t.SwitchStallMs));
        var json = System.Text.Json.JsonSerializer.Serialize(response.Disks[0].Timings, new System.Text.Json.JsonSerializerOptions(System.Text.Json.JsonSerializerDefaults.Web));
        Assert.Equal(1, System.Text.RegularExpressions.Regex.Count(json, "\"switchStallMs\":4.2"));
        Assert.DoesNotContain("switchStallMs\":null", json);
    }

    [Fact]
    public void A_completed_migration_shows_no_error_that_a_retried_step_got_past_and_one_still_running_does()
    {
        var completed = MigrationEndpoints.ResponseOf(View("completed", finished: true));
        Assert.Null(completed.Error);
        Assert.Null(completed.ErrorCode);
        Assert.Null(completed.Disks[0].LastError);

        var running = MigrationEndpoints.ResponseOf(View("running", finished: false));
        Assert.Equal("MIRROR_FAILED: the first mirror broke off", running.Error);
        Assert.NotNull(running.Disks[0].LastError);
    }
}
