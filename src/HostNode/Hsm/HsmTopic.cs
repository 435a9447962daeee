namespace LiveMigration.HostNode.Hsm;

/// <summary>Where the saga finds a host's HSM: a DistributedPubSub topic (or receptionist key) per host id.</summary>
public static class HsmTopic
{
    /// <summary>The name the HSM actor is started under on its host.</summary>
    public const string ActorName = "hsm";

    public static string For(string hostId)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(hostId);
        return $"hsm-{hostId}";
    }
}
