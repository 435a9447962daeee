using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Migration;

namespace LiveMigration.Shared.Tests.Hosting;

/// <summary>The fault plan's rules as the matrix writes them, including the Coordinator's repeated and late commands.</summary>
public sealed class FaultPlanTests
{
    [Fact]
    public void Kills_duplicates_and_late_replays_parse()
    {
        var rules = FaultPlan.Parse("host-1:kill-qemu@WaitMirrorReady/host-received; coordinator:duplicate@Pivot/before-send;" +
                                    "coordinator:replay-late@CloneImageStructure/ended;coordinator:replay-late@DeleteSourceImage/outcome-persisted");
        Assert.Equal(
        [
            new FaultRule("host-1", FaultAction.KillQemu, MigrationStep.WaitMirrorReady, FaultMoment.HostReceived),
            new FaultRule("coordinator", FaultAction.Duplicate, MigrationStep.Pivot, FaultMoment.BeforeSend),
            new FaultRule("coordinator", FaultAction.ReplayLate, MigrationStep.CloneImageStructure, FaultMoment.Ended),
            new FaultRule("coordinator", FaultAction.ReplayLate, MigrationStep.DeleteSourceImage, FaultMoment.OutcomePersisted),
        ], rules);
    }

    [Theory]
    [InlineData("coordinator:duplicate@Pivot/host-done")] // a duplicate is made where the Coordinator sends
    [InlineData("host-1:duplicate@Pivot/before-send")] // only the Coordinator sends commands
    [InlineData("coordinator:replay-late@Pivot/before-send")] // late means after the saga moved on
    [InlineData("coordinator:kill-self@Pivot/ended")] // ended is a replay moment
    [InlineData("coordinator:resend@Pivot/before-send")]
    public void Rules_that_name_no_real_point_are_refused(string text) =>
        Assert.Throws<ArgumentException>(() => FaultPlan.Parse(text));
}
