from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESENT: _ClassVar[FeatureStatus]
    NOT_FOUND: _ClassVar[FeatureStatus]
    EXPIRED: _ClassVar[FeatureStatus]
PRESENT: FeatureStatus
NOT_FOUND: FeatureStatus
EXPIRED: FeatureStatus

class BoolList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class Int32List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class Int64List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class DoubleList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class FeatureList(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, features: _Optional[_Iterable[str]] = ...) -> None: ...

class EntityValues(_message.Message):
    __slots__ = ("int64_values", "string_values")
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    int64_values: Int64List
    string_values: StringList
    def __init__(self, int64_values: _Optional[_Union[Int64List, _Mapping]] = ..., string_values: _Optional[_Union[StringList, _Mapping]] = ...) -> None: ...

class RequestValues(_message.Message):
    __slots__ = ("int64_values", "double_values", "string_values", "bool_values")
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUES_FIELD_NUMBER: _ClassVar[int]
    int64_values: Int64List
    double_values: DoubleList
    string_values: StringList
    bool_values: BoolList
    def __init__(self, int64_values: _Optional[_Union[Int64List, _Mapping]] = ..., double_values: _Optional[_Union[DoubleList, _Mapping]] = ..., string_values: _Optional[_Union[StringList, _Mapping]] = ..., bool_values: _Optional[_Union[BoolList, _Mapping]] = ...) -> None: ...

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("feature_service", "feature_list", "entities", "request_values")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: EntityValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[EntityValues, _Mapping]] = ...) -> None: ...
    class RequestValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RequestValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RequestValues, _Mapping]] = ...) -> None: ...
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LIST_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_VALUES_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    feature_list: FeatureList
    entities: _containers.MessageMap[str, EntityValues]
    request_values: _containers.MessageMap[str, RequestValues]
    def __init__(self, feature_service: _Optional[str] = ..., feature_list: _Optional[_Union[FeatureList, _Mapping]] = ..., entities: _Optional[_Mapping[str, EntityValues]] = ..., request_values: _Optional[_Mapping[str, RequestValues]] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("name", "bool_values", "int32_values", "int64_values", "float_values", "double_values", "string_values", "nulls", "statuses", "ages_ns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUES_FIELD_NUMBER: _ClassVar[int]
    INT32_VALUES_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUES_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    NULLS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    AGES_NS_FIELD_NUMBER: _ClassVar[int]
    name: str
    bool_values: BoolList
    int32_values: Int32List
    int64_values: Int64List
    float_values: FloatList
    double_values: DoubleList
    string_values: StringList
    nulls: _containers.RepeatedScalarFieldContainer[bool]
    statuses: _containers.RepeatedScalarFieldContainer[FeatureStatus]
    ages_ns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., bool_values: _Optional[_Union[BoolList, _Mapping]] = ..., int32_values: _Optional[_Union[Int32List, _Mapping]] = ..., int64_values: _Optional[_Union[Int64List, _Mapping]] = ..., float_values: _Optional[_Union[FloatList, _Mapping]] = ..., double_values: _Optional[_Union[DoubleList, _Mapping]] = ..., string_values: _Optional[_Union[StringList, _Mapping]] = ..., nulls: _Optional[_Iterable[bool]] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatus, str]]] = ..., ages_ns: _Optional[_Iterable[int]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureVector]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureVector, _Mapping]]] = ...) -> None: ...

class PushColumn(_message.Message):
    __slots__ = ("int64_values", "double_values", "string_values", "bool_values", "timestamp_micros", "nulls")
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MICROS_FIELD_NUMBER: _ClassVar[int]
    NULLS_FIELD_NUMBER: _ClassVar[int]
    int64_values: Int64List
    double_values: DoubleList
    string_values: StringList
    bool_values: BoolList
    timestamp_micros: Int64List
    nulls: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, int64_values: _Optional[_Union[Int64List, _Mapping]] = ..., double_values: _Optional[_Union[DoubleList, _Mapping]] = ..., string_values: _Optional[_Union[StringList, _Mapping]] = ..., bool_values: _Optional[_Union[BoolList, _Mapping]] = ..., timestamp_micros: _Optional[_Union[Int64List, _Mapping]] = ..., nulls: _Optional[_Iterable[bool]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("view", "columns")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: PushColumn
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[PushColumn, _Mapping]] = ...) -> None: ...
    VIEW_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    view: str
    columns: _containers.MessageMap[str, PushColumn]
    def __init__(self, view: _Optional[str] = ..., columns: _Optional[_Mapping[str, PushColumn]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("view", "rows", "entities", "log_file")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    LOG_FILE_FIELD_NUMBER: _ClassVar[int]
    view: str
    rows: int
    entities: int
    log_file: str
    def __init__(self, view: _Optional[str] = ..., rows: _Optional[int] = ..., entities: _Optional[int] = ..., log_file: _Optional[str] = ...) -> None: ...
