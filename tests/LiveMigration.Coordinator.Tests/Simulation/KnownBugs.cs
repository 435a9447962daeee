namespace LiveMigration.Coordinator.Tests.Simulation;

/// <summary>A bug the simulation found in the saga, with a minimal deterministic reproduction.</summary>
public sealed record KnownBug(string Id, string Title, string Invariant, string Reproduction, Func<SimResult> Reproduce, Func<SimResult, bool> Explains, bool Fixed = false);

/// <summary>The bugs found so far; the sweep reports their seeds apart from new failures.</summary>
public static class KnownBugs
{
    public static readonly IReadOnlyList<KnownBug> All = [];

    public static KnownBug? Classify(SimResult result) =>
        result.Failed ? All.FirstOrDefault(b => !b.Fixed && b.Explains(result)) : null;
}
