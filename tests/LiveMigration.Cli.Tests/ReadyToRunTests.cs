using System.Reflection.PortableExecutable;
using LiveMigration.Cli.Local;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// The Release builds <c>lsm local up</c> starts carry ahead-of-time code (src/AheadOfTime.props): without it a
/// restarted Coordinator replays its sagas through tier-0 JIT code, a second slower for 1,000 in flight. The suite runs
/// on a Release build (./run.sh test), so these are the very files the process tests start.
/// </summary>
public sealed class ReadyToRunTests
{
    [Theory]
    [InlineData("Coordinator", "LiveMigration.Coordinator.dll")]
    [InlineData("Coordinator", "LiveMigration.Shared.dll")]
    [InlineData("Coordinator", "Akka.dll")]
    [InlineData("Coordinator", "Akka.Persistence.Sql.dll")]
    [InlineData("Coordinator", "linq2db.dll")]
    [InlineData("HostNode", "LiveMigration.HostNode.dll")]
    [InlineData("HostNode", "Akka.Remote.dll")]
    public void The_nodes_release_build_is_compiled_ahead_of_time(string project, string assembly)
    {
        Assert.True(IsReadyToRun(project, assembly), $"{Built(project, assembly)} has no ReadyToRun code");
    }

    private static bool IsReadyToRun(string project, string assembly)
    {
        using var pe = new PEReader(File.OpenRead(Built(project, assembly)));
        var cor = pe.PEHeaders.CorHeader ?? throw new InvalidOperationException($"{assembly} is not a .NET assembly");
        return cor.ManagedNativeHeaderDirectory.Size > 0;
    }

    private static string Built(string project, string assembly) =>
        Path.Combine(LocalCluster.FindRepositoryRoot(), "src", project, "bin", "Release", "net10.0", assembly);
}
