namespace LiveMigration.Shared.Protocol;

/// <summary>What a restarting node and the running members say about the crashed incarnation it replaces.</summary>
public interface IMembershipMessage;

/// <summary>
/// Asks a running member to down the crashed incarnation at <paramref name="Address"/> that the asking node replaces
/// (<c>--replaces</c>); answered with <see cref="PredecessorGone"/> once that address is no member any more, and not at
/// all meanwhile (the asker asks again).
/// </summary>
public sealed record DownPredecessor(string Address) : IMembershipMessage;

/// <summary>The crashed incarnation at <paramref name="Address"/> is no member of the cluster (removed, or never was).</summary>
public sealed record PredecessorGone(string Address) : IMembershipMessage;
